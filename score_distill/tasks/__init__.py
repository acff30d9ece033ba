"""Task suites (generated math and search worlds, external JSONL files) and their scorers."""
