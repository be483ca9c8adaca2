"""mabeamctl: the admin command line and its control-socket client."""
