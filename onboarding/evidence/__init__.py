"""Evidence: each onboarding's evidence pack for a hospital's security and go-live review."""
