"""The reference policy π_ref: its log-probs for a batch, run online or looked up in a cache."""
