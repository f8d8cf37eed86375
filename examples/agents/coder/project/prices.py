"""Price helpers for the shop."""


def apply_discount(price, percent):
    """The price after a discount of `percent` percent, rounded to cents."""
    return round(price - price * percent, 2)


def total(prices):
    """The sum of a list of prices, rounded to cents."""
    return round(sum(prices), 2)
