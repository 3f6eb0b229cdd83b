"""What the launchers call: search, re-training, export, studies and the
drivers of the baselines, with their callbacks and plots.
"""
