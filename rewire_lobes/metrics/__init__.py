"""Task scores computed exactly as official s3prl computes them."""
