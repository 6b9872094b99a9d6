"""The text side: the trimmed mBART tokenizer and the pseudo-gloss vocabulary and targets."""
