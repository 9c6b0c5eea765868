"""Evaluation: faithfulness and completeness of circuits, agreement between methods."""
