"""Preprocessing: video corpora -> aligned 16-frame clips with audio -> WebDataset shards.

Plain functions (listing, decoding, resizing, cutting, encoding, shard writing) work without
Ray; `pipeline.run` wires them into a streaming Ray Data job.
"""
