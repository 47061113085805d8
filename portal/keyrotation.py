"""Re-encrypting secrets at rest under the newest key of FIELD_ENCRYPTION_KEYS.

Works on the stored ciphertext with plain SQL, so a value is never decrypted into a model
instance, and each row is rewritten only if it still holds the ciphertext that was read (a
secret changed meanwhile is already under the newest key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.apps import apps
from django.db import connection, models, transaction

from portal import audit, crypto


@dataclass
class ColumnReport:
    label: str
    done: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class RotationReport:
    columns: list[ColumnReport]

    @property
    def failed(self) -> int:
        return sum(len(column.failed) for column in self.columns)


def encrypted_columns() -> list[tuple[type[models.Model], crypto.EncryptedTextField]]:
    """Every EncryptedTextField of every installed model."""
    return [
        (model, model_field)
        for model in apps.get_models()
        for model_field in model._meta.concrete_fields
        if isinstance(model_field, crypto.EncryptedTextField)
    ]


def rotate_all(*, check_only: bool = False) -> RotationReport:
    """Rotate (or, with check_only, just try to decrypt) every stored secret; report per column."""
    report = RotationReport(columns=[])
    for model, model_field in encrypted_columns():
        report.columns.append(_rotate_column(model, model_field, check_only=check_only))
    if not check_only:
        with transaction.atomic():
            audit.record(
                action="keys.rotated",
                detail={c.label: {"rotated": c.done, "failed": len(c.failed)} for c in report.columns},
            )
    return report


def _rotate_column(
    model: type[models.Model], model_field: crypto.EncryptedTextField, *, check_only: bool
) -> ColumnReport:
    quote = connection.ops.quote_name
    # Concrete fields and primary keys always have a column; the stubs allow None for virtual fields.
    table, column = quote(model._meta.db_table), quote(str(model_field.column))
    pk = quote(str(model._meta.pk.column if model._meta.pk else "id"))
    report = ColumnReport(label=f"{model._meta.label}.{model_field.name}")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} <> ''")  # noqa: S608 - quoted identifiers, no input
        rows = cursor.fetchall()
    for row_id, token in rows:
        try:
            if check_only:
                crypto.decrypt(token)
            else:
                new_token = crypto.rotate(token)
        except crypto.DecryptionError:
            report.failed.append(str(row_id))
            continue
        if not check_only:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {table} SET {column} = %s WHERE {pk} = %s AND {column} = %s",  # noqa: S608
                    [new_token, row_id, token],
                )
        report.done += 1
    return report
