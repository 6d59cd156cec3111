"""A helper module the records-style fixture imports, as records import their lossless_caps.py: a counted file."""


def smooth(values, weight):
    # exponential moving average: the records' EMA of weights, in miniature
    out, avg = [], values[0]
    for v in values:
        avg = weight * avg + (1 - weight) * v
        out.append(avg)
    return out
