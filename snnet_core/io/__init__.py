"""Files: atomic writes, bounded checkpoint reads, the safe config loader, run directories and input images."""
