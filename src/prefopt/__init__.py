"""prefopt: align causal language models to preferences with DPO, IPO, SimPO and KTO."""

__version__ = "0.1.0"
