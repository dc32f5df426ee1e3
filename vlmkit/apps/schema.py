"""Extraction schemas: the built-in ones (receipt, invoice) or a user's JSON-schema file, and their field roles.

The parser and the verifier think in *roles* (merchant, date, items with
name / qty / unit_price / price, subtotal, tax, total, currency); a schema
names its properties as it likes. `FieldMap` matches property names to roles
by a list of synonyms ("vendor" is the merchant, "amount" is a line's price),
so a custom schema gets the OCR parser, the checks and the evidence for every
property it names in a way we recognise, and null for the others.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VlmkitError

BUILTIN = ("receipt", "invoice")
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

ROLE_NAMES = {  # role -> property names that mean it (compared lower-case, without "_", "-" or spaces)
    "merchant": ("merchant", "vendor", "seller", "store", "shop", "company", "supplier", "merchantname", "storename"),
    "date": ("date", "invoicedate", "issuedate", "receiptdate", "purchasedate", "transactiondate"),
    "due_date": ("duedate", "paymentdue"),
    "invoice_number": ("invoicenumber", "invoiceno", "invoiceid", "number", "receiptnumber"),
    "customer": ("customer", "billto", "buyer", "client", "customername"),
    "items": ("items", "lineitems", "lines", "products", "entries"),
    "subtotal": ("subtotal", "net", "netamount", "subtotalamount"),
    "tax": ("tax", "vat", "taxamount", "salestax", "gst"),
    "total": ("total", "totalamount", "grandtotal", "amountdue", "totaldue", "balancedue"),
    "currency": ("currency", "currencycode"),
}
ITEM_ROLE_NAMES = {
    "name": ("name", "description", "item", "product", "itemname", "title"),
    "qty": ("qty", "quantity", "count", "units"),
    "unit_price": ("unitprice", "priceeach", "rate", "unitcost", "each", "priceperunit"),
    "price": ("price", "amount", "linetotal", "total", "lineamount", "totalprice"),
}
MONEY_ROLES = ("subtotal", "tax", "total")
ITEM_MONEY_ROLES = ("unit_price", "price")


class ExtractError(VlmkitError):
    """A schema cannot be used, or an extraction request is malformed."""


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


@dataclass
class FieldMap:
    """Schema property names <-> roles, for the top level and for one item."""

    schema: dict
    roles: dict[str, str] = field(default_factory=dict)  # property -> role
    item_roles: dict[str, str] = field(default_factory=dict)  # item property -> item role
    items_key: str | None = None

    def __post_init__(self):
        props = self.schema.get("properties") or {}
        taken: set[str] = set()
        for key in props:
            role = _role_of(key, ROLE_NAMES, taken)
            if role:
                self.roles[key] = role
                taken.add(role)
        self.items_key = next((k for k, r in self.roles.items() if r == "items"), None)
        if self.items_key:
            item_schema = props[self.items_key].get("items") or {}
            taken = set()
            for key in item_schema.get("properties") or {}:
                role = _role_of(key, ITEM_ROLE_NAMES, taken)
                if role:
                    self.item_roles[key] = role
                    taken.add(role)

    @property
    def title(self) -> str:
        return str(self.schema.get("title") or "document")

    def to_schema(self, roles: dict) -> dict:
        """Role values -> a document with the schema's property names (unknown properties null)."""
        out = {}
        for key, sub in (self.schema.get("properties") or {}).items():
            role = self.roles.get(key)
            if role == "items":
                out[key] = [{k: it.get(r) for k, r in ((k, self.item_roles.get(k)) for k in _item_props(sub))}
                            for it in roles.get("items") or []]
            else:
                out[key] = roles.get(role) if role else None
        return out

    def to_roles(self, data: dict) -> dict:
        """A document in the schema's names -> role values (roles the schema lacks are absent)."""
        roles: dict = {}
        if not isinstance(data, dict):
            return roles
        for key, role in self.roles.items():
            if role == "items":
                items = data.get(key) if isinstance(data.get(key), list) else []
                roles["items"] = [{r: it.get(k) for k, r in self.item_roles.items()} if isinstance(it, dict) else {}
                                  for it in items]
            else:
                roles[role] = data.get(key)
        return roles


def _item_props(items_schema: dict) -> list[str]:
    return list(((items_schema.get("items") or {}).get("properties") or {}).keys())


def _role_of(key: str, table: dict, taken: set[str]) -> str | None:
    k = _norm(key)
    for role, names in table.items():
        if role not in taken and k in names:
            return role
    return None


def load_schema(spec: str | dict) -> dict:
    """'receipt' | 'invoice' | a path to a JSON-schema file | a schema dict -> the schema (checked for the decoder)."""
    if not isinstance(spec, (str, dict)):
        raise ExtractError(f"a schema is a name ({' or '.join(BUILTIN)}), a file path or a JSON-schema object, not {type(spec).__name__}")
    if isinstance(spec, dict):
        schema = spec
        where = "schema"
    elif spec in BUILTIN:
        schema = json.loads((SCHEMA_DIR / f"{spec}.json").read_text(encoding="utf-8"))
        where = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise ExtractError(f"unknown schema {spec!r}: use {' or '.join(BUILTIN)}, or a JSON-schema file")
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExtractError(f"{path}: not valid JSON ({e})") from None
        where = str(path)
    if not isinstance(schema, dict) or schema.get("type", "object") != "object" or not schema.get("properties"):
        raise ExtractError(f"{where}: an extraction schema must be a JSON object schema with properties")
    from ..constrained import compile_schema

    compile_schema(schema)  # raises SchemaError (a VlmkitError) for what constrained decoding cannot follow
    return schema
