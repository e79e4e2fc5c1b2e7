"""The settlement engine: one config's routing, what each event and delivery is owed, endpoint health."""
