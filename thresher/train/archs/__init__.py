"""One module per SAE architecture behind the strategy of `base.Architecture`; `registry` maps
the config's `arch` names to them."""
