"""HTTP: the Falcon resources, middleware, Telegram auth, errors, conditional requests and the OpenAPI document."""
