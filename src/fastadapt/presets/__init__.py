"""Paper-reproduction presets, one TOML file each (listed by ``fastadapt presets``)."""
