"""Notifications by e-mail over SMTP, with STARTTLS and authentication."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

from pydantic import Field, SecretStr

from sslclm.errors import ConnectorError, InvalidInputError
from sslclm.spi import CheckRequest, CheckResult
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.notify import Notification, Notifier, SendResult


class EmailConfig(ConnectorConfig):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = Field(default=True, description="Upgrade with STARTTLS before authenticating.")
    username: str | None = Field(default=None, max_length=255)
    password: SecretStr | None = None
    sender: str = Field(min_length=3, max_length=255, description="From address.")
    recipients: list[str] = Field(default_factory=list, description="Default To addresses.")
    ca_file: str | None = Field(
        default=None, description="PEM file of CAs to trust; default the system store."
    )
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)


class EmailNotifier(Notifier):
    type_key = "email"
    display_name = "E-mail (SMTP)"
    capabilities = frozenset({Capability.SEND})
    Config = EmailConfig

    @property
    def settings(self) -> EmailConfig:
        assert isinstance(self.config, EmailConfig)
        return self.config

    def _connect(self) -> smtplib.SMTP:
        cfg = self.settings
        try:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectorError(f"cannot reach {cfg.host}:{cfg.port}: {exc}", retryable=True) from None
        try:
            smtp.ehlo()
            if cfg.starttls:
                context = ssl.create_default_context(cafile=cfg.ca_file)
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.username:
                password = cfg.password.get_secret_value() if cfg.password else ""
                smtp.login(cfg.username, password)
        except smtplib.SMTPAuthenticationError as exc:
            smtp.close()
            reply = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else ""
            raise ConnectorError(
                f"the SMTP server refused the credentials: {exc.smtp_code} {reply}".rstrip(), retryable=False
            ) from None
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            smtp.close()
            raise ConnectorError(
                f"SMTP session failed: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        return smtp

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        try:
            smtp = self._connect()
        except ConnectorError as exc:
            return CheckResult(ok=False, message=exc.message)
        smtp.quit()
        return CheckResult(ok=True, message=f"connected to {self.settings.host}:{self.settings.port}")

    def send(self, notification: Notification) -> SendResult:
        cfg = self.settings
        recipients = list(notification.recipients or cfg.recipients)
        if not recipients:
            raise InvalidInputError(
                "no recipients: configure recipients or route to an address", field="recipients"
            )
        message = EmailMessage()
        message["From"] = cfg.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = notification.subject
        message_id = make_msgid(domain=cfg.sender.rpartition("@")[2] or None)
        message["Message-ID"] = message_id
        body = notification.body + (f"\n\n{notification.link}" if notification.link else "")
        message.set_content(body)
        smtp = self._connect()
        try:
            refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ConnectorError(
                f"every recipient was refused: {sorted(exc.recipients)}", retryable=False
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectorError(f"sending failed: {type(exc).__name__}: {exc}", retryable=True) from None
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()
        detail = f"refused: {sorted(refused)}" if refused else f"accepted for {len(recipients)} recipient(s)"
        return SendResult(delivered=True, message_id=message_id, detail=detail)
