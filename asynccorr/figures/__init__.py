"""Figures: an experiment folder's figures (``experiment``) and a regime study's heat maps
(``regimes``). The only layer that imports matplotlib."""
