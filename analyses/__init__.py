"""Exact federated statistics: pure local/combine functions over pandas and numpy.

No Flower, no files, no UI. Each analysis is a plan run by the coordinator and a
`local` function run by each site; see `analyses.contract`.
"""
