"""The pure core: the config and its validation, the values that flow, the platforms' contracts, matching, signing,
retry policy, offsets and the network guard. Nothing here imports aiohttp or aiokafka, or does network I/O."""
