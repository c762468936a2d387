""" Writing models out for others: the Hugging Face Hub layout (``hub``). """
