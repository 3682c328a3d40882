"""SASRec on MovieLens-100K, monitored by attnmon through a real update (see README)."""
