"""What every process shares: settings (defaults, file, environment, flags), logging, the
wall clock."""
