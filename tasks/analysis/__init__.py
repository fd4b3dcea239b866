"""What the ai queue runs: item analysis and capsules through OpenAI (or locally), and the key limiter."""
