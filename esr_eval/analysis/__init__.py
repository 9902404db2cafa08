"""Analyses over logs: judge agreement, and detector activity along episodes."""
