"""Toy worlds: prompts, demonstrations, gold rewards and verifiers, generated procedurally."""
