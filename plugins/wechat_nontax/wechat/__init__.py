"""The WeChat non-tax bill API client: the bill and its checks against the interface document,
the hook, the errcode policy, typed errors, the token cache and the retry loop around one call."""
