"""Data stages: ingest, clean, tokenize. Each is a plain function; flows/ only composes them."""
