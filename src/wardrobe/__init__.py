"""Wardrobe: backend of the Telegram Mini App that keeps a wardrobe of clothes."""
