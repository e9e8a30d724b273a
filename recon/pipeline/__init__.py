"""The pipeline behind ``recon.compress``: data, statistics, fitting, rank policies, reports."""
