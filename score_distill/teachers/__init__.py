"""Teachers: the reference-solution teacher and the LLM teacher, behind one interface."""
