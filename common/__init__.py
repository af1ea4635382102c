"""Shared building blocks of the plasticity experiments (the README's common/ table says what each module holds)."""
