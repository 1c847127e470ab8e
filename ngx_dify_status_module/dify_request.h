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
    DIFY_MEDIA_CONFLICT,        /* Content-Type headers that differ */
    DIFY_MEDIA_NOT_JSON,        /* neither application/json nor +json */
    DIFY_MEDIA_ENCODED          /* a Content-Encoding other than identity */
} dify_media_e;


/* the Content-Type and Content-Encoding headers of a request */
typedef struct {
    dify_str_t            type;         /* the last Content-Type, stripped */
    unsigned              has_type:1;
    unsigned              conflict:1;
    unsigned              encoded:1;
} dify_media_t;


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
 * Derives the token from an Authorization value exactly as Dify does
 * behind gunicorn: gunicorn strips SP and HTAB from both ends of the
 * value (nginx keeps a trailing HTAB over HTTP/1.1, and leading and
 * trailing SP and HTAB over HTTP/2); then wraps.py answers
 * DIFY_AUTH_MISSING when the stripped value has no SP, splits it with
 * str.split(None, 1) on Python's whitespace over latin-1 (a value of
 * fewer than two words also gives DIFY_AUTH_MISSING: the unpacking
 * fails in Dify with a 500), and answers DIFY_AUTH_SCHEME when the
 * first word, lowered, is not "bearer".  The token is the rest up to
 * the end of the stripped value, other whitespace at its end included,
 * and points into p.  p may be NULL when the header is absent (nginx
 * refuses a repeated Authorization header itself).
 */
dify_auth_e dify_parse_authorization(const unsigned char *p, size_t len,
    dify_str_t *token);

/*
 * The media headers as Dify sees them.  Each header is given in the
 * order received, repeats included.  gunicorn strips SP and HTAB from
 * both ends of each value and keeps the last Content-Type: two that
 * differ once stripped give DIFY_MEDIA_CONFLICT, identical repeats
 * count as one.  The one kept is judged as Werkzeug's is_json does:
 * the media type, parameters stripped and compared case-insensitively,
 * is application/json or application/<x>+json.  Every element of every
 * Content-Encoding list must be "identity" (any case) or empty.
 * Verdicts in this order: MISSING, CONFLICT, NOT_JSON, ENCODED.
 * The values must outlive m.
 */
void dify_media_init(dify_media_t *m);
void dify_media_type(dify_media_t *m, const unsigned char *p, size_t len);
void dify_media_encoding(dify_media_t *m, const unsigned char *p,
    size_t len);
dify_media_e dify_media_verdict(const dify_media_t *m);

/*
 * The same for one Content-Type and one Content-Encoding header; ct or
 * ce may be NULL when the header is absent.
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
