"""Measuring a model: scikit-learn's metrics and the domain-shift analysis."""
