"""score-distill: distil tool-using LLM agents with SCoRe (student-centred one-step reinforcement)."""

__version__ = "0.1.0"
