"""What an encoder's representations look like, before any fine-tuning."""
