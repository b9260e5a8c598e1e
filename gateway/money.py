"""Money at the edges is a decimal string with an ISO 4217 currency; inside it is int minor units."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# Minor-unit exponents (ISO 4217) of the currencies a European retailer meets; others default to 2.
_EXPONENTS: dict[str, int] = {
    "BHD": 3,
    "CLP": 0,
    "HUF": 2,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "OMR": 3,
    "TND": 3,
    "VND": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
}


# Amounts are below a trillion (12 digits before the point): minor units stay far inside SQLite's integer.
MAX_AMOUNT = 10**12


def exponent(currency: str) -> int:
    """Number of decimal places of the currency's minor unit."""
    return _EXPONENTS.get(currency, 2)


def is_currency_code(value: str) -> bool:
    return len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()


def to_minor(amount: str, currency: str) -> int:
    """ "12.99" EUR -> 1299. Raises ValueError for floats, negatives or too many decimals."""
    if not isinstance(amount, str):
        raise ValueError('must be a decimal string such as "12.99", not a number')
    places = _EXPONENTS.get(currency, 2)
    whole, dot, frac = amount.partition(".")
    # the common case ("12.99") without Decimal: this runs for every item of a 100k-line price file
    if whole.isascii() and whole.isdigit() and len(whole) <= 12 and (not dot or (frac.isascii() and frac.isdigit())):
        if len(frac) <= places:
            return int(whole + frac.ljust(places, "0"))
        raise ValueError(f'"{amount}" has more than {places} decimals for {currency}')
    try:
        value = Decimal(amount)
    except (InvalidOperation, ValueError):  # ValueError: more digits than Python converts
        raise ValueError(f'"{amount}" is not a decimal amount such as "12.99"') from None
    if not value.is_finite() or value < 0:
        raise ValueError(f'"{amount}" is not a positive amount')
    if value >= MAX_AMOUNT:  # "1e400" is a decimal string too; the cache keeps SQLite integers
        raise ValueError(f'"{amount}" is too large; at most {MAX_AMOUNT - 1} and its decimals')
    places = exponent(currency)
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f'"{amount}" has more than {places} decimals for {currency}')
    return int(scaled)


def from_minor(minor: int, currency: str) -> str:
    """1299 EUR -> "12.99"."""
    places = exponent(currency)
    return f"{Decimal(minor).scaleb(-places):.{places}f}"


def display(minor: int, currency: str) -> str:
    """How a price reads on a French shelf label or kiosk: 12,99 € (other currencies: 12.99 USD)."""
    amount = from_minor(minor, currency)
    if currency == "EUR":
        return amount.replace(".", ",") + " €"
    return f"{amount} {currency}"
