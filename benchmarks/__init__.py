"""Benchmarks: inference and training speed, the data pipeline, where LiteRT spends its time; reports in results/."""
