"""botocore in a privileged process (docs/security.md, "Privileged hosts"): the module's session
reads none of the environment variables trust.ignored() names, and os.environ stays the host's.

Three places read the environment. The session's configuration (AWS_CA_BUNDLE, AWS_CONFIG_FILE,
AWS_EC2_METADATA_SERVICE_ENDPOINT and the rest of botocore's session variables) goes through
the session variable table, which names each setting's variables: the ignored ones are taken out
of it. Configured endpoints (AWS_ENDPOINT_URL_*, a config file's) are off for every client of
the session, the STS and SSO clients the credential providers make included. And the credential
providers read variables of their own: the container provider (its `_environ`, also the one
assume-role's `credential_source = EcsContainer` uses) gets the filtered environment, and the
web identity provider, which reads os.environ itself, is told to read no variable (as botocore
does for a session with an explicit profile). A botocore that no longer has these attributes
loses the provider instead: nothing falls back to os.environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import trust

CONTAINER = "container-role"
WEB_IDENTITY = "assume-role-with-web-identity"


def restrict(session: Any, env: Mapping[str, str] | None = None) -> None:
    """Before the session's first client: its configuration and credential providers ignore
    the variables a privileged process ignores (`env`: the filtered environment to read)."""
    env = trust.environ() if env is None else env
    for name, (config_name, variables, default, conversion) in list(
            session.session_var_map.items()):
        names = [variables] if isinstance(variables, str) else list(variables or ())
        kept = [n for n in names if not trust.ignored(n)]
        if kept != names:  # rebuilds the setting's lookup chain without them
            session.session_var_map[name] = (config_name, kept or None, default, conversion)
    # No endpoint from AWS_ENDPOINT_URL_* or a config file for any client of the session: also
    # not for the STS and SSO clients the credential providers make.
    session.set_config_variable("ignore_configured_endpoint_urls", True)
    make = session._create_credential_resolver  # botocore's own chain, made when first needed
    session.lazy_register_component("credential_provider", lambda: _restricted(make(), env))


def _restricted(resolver: Any, env: Mapping[str, str]) -> Any:
    for provider in list(resolver.providers):
        if provider.METHOD == CONTAINER and isinstance(getattr(provider, "_environ", None),
                                                       Mapping):
            provider._environ = env
        elif provider.METHOD == WEB_IDENTITY and hasattr(provider, "_disable_env_vars"):
            provider._disable_env_vars = True
        elif provider.METHOD in (CONTAINER, WEB_IDENTITY):
            resolver.remove(provider.METHOD)
    return resolver
