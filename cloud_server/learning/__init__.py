"""How the fleet learns: the strategies and their settings, aggregation (streaming and robust), GenFL's
generators, pools and curation."""
