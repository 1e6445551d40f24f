"""Target encoders for the CTC heads: ASR characters and sub-words, SF characters with slot tags."""
