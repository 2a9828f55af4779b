"""Preprocessing: video corpora -> aligned 16-frame clips with audio -> WebDataset shards.

Plain functions (listing, decoding, resizing, cutting, encoding, shard writing) work without
Ray; `pipeline.run` runs them as a bounded pool of Ray tasks, one unit (one shard) each.
"""
