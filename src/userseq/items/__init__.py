"""Item representations: id tables (by name: `ITEM_TABLES`), text items, compressed tables."""

from userseq.items.registry import ITEM_TABLES, register_item_table

__all__ = ["ITEM_TABLES", "register_item_table"]
