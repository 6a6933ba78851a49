"""The pure core: money, rating, the ledger's rules, numbers, the call decision, FastAGI and AMI
as sans-IO protocols, and the domain records. Imports nothing outside core/, does no I/O."""
