"""Recipe parts shared by several methods: adversary, discriminators, fake score network,
distribution matching, losses, and the builders that make them from a config."""
