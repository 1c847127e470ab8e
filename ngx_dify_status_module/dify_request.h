/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Request-line and header checks of the batch-status route.
 * Pure logic: no nginx header is included here.
 */


#ifndef _DIFY_REQUEST_H_INCLUDED_
#define _DIFY_REQUEST_H_INCLUDED_


#include <stddef.h>


typedef struct {
    size_t                len;
    const unsigned char  *data;
} dify_str_t;


typedef enum {
    DIFY_AUTH_OK = 0,
    DIFY_AUTH_MISSING,          /* absent, or no space in it */
    DIFY_AUTH_SCHEME            /* scheme other than "bearer" */
} dify_auth_e;


typedef enum {
    DIFY_MEDIA_OK = 0,
    DIFY_MEDIA_MISSING,         /* no Content-Type */
    DIFY_MEDIA_NOT_JSON,        /* neither application/json nor +json */
    DIFY_MEDIA_ENCODED          /* a Content-Encoding other than identity */
} dify_media_e;


/*
 * Matches "{prefix}/datasets/{dataset_id}/documents/status/{action}",
 * anchored at the end of the URI; runs of "/" count as one, as the
 * nginx in front of Dify merges them; a trailing "/" does not match.
 * Returns 1 and sets dataset_id and action on a match, 0 otherwise.
 */
int dify_route_match(const unsigned char *uri, size_t len,
    dify_str_t *dataset_id, dify_str_t *action);

/*
 * The path Flask will route, from the raw request target that
 * proxy_pass (without a URI part) sends on: up to the first "?" or
 * "#", each valid %XX decoded once ("%2F" included), and no dot segment
 * resolved: Werkzeug routes ".../status/.." with action "..", where
 * nginx's $uri has resolved it to ".../documents/".  out must hold len
 * bytes; returns the length written.
 */
size_t dify_flask_path(const unsigned char *raw, size_t len,
    unsigned char *out);

/* 8-4-4-4-12 hex digits, either case, as Werkzeug's uuid converter */
int dify_is_uuid(const unsigned char *p, size_t len);

/* 1 for enable, disable, archive and un_archive, 0 otherwise */
int dify_action_is_valid(const unsigned char *p, size_t len);

/*
 * Parses an Authorization value the way Dify's validate_dataset_token
 * does (str.split(None, 1), scheme compared case-insensitively).
 * p may be NULL when the header is absent.  An empty token counts as
 * DIFY_AUTH_MISSING.
 */
dify_auth_e dify_parse_authorization(const unsigned char *p, size_t len,
    dify_str_t *token);

/*
 * Werkzeug's is_json: the media type, parameters stripped and compared
 * case-insensitively, is application/json or application/<x>+json.
 * ct or ce may be NULL when the header is absent.
 */
dify_media_e dify_check_media(const unsigned char *ct, size_t ct_len,
    const unsigned char *ce, size_t ce_len);

/*
 * Writes {"status": N, "code": "...", "message": "..."} (keys in the
 * order of the spec's examples, strings JSON-escaped) into buf.
 * Returns the length written, or 0 when size is too small.
 */
size_t dify_json_envelope(unsigned char *buf, size_t size, int status,
    const char *code, const char *message);


#endif /* _DIFY_REQUEST_H_INCLUDED_ */
