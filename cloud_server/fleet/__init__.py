"""Who belongs to the fleet: the device registry, enrollment and signed frames, the CA."""
