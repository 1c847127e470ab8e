/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Request-line and header checks of the batch-status route.
 * Pure logic: no nginx header is included here.
 */


#include <string.h>

#include "dify_request.h"


#define DIFY_ROUTE_SEGMENTS  5      /* datasets, id, documents, status, act */


static unsigned char dify_hex_value(unsigned char c);
static void dify_strip_ows(const unsigned char **p,
    const unsigned char **last);
static int dify_segment_is(const unsigned char *p, size_t len,
    const char *name, size_t name_len);
static int dify_media_is_json(const unsigned char *p, size_t len);
static int dify_ascii_caseeq(const unsigned char *p, const char *lower,
    size_t len);
static unsigned char *dify_json_string(unsigned char *p, unsigned char *last,
    const char *s);
static unsigned char *dify_json_bytes(unsigned char *p, unsigned char *last,
    const char *s, size_t len);


/*
 * Python's str.isspace() for the code points 0-255: header values reach
 * Dify as latin-1 strings (PEP 3333), so these are the bytes on which
 * auth_header.split(None, 1) and str.strip() cut.
 */
static const unsigned char  dify_py_space[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1,
    [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, [' '] = 1,
    [0x85] = 1, [0xa0] = 1
};


static const unsigned char  dify_hex[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1
};


int
dify_route_match(const unsigned char *uri, size_t len,
    dify_str_t *dataset_id, dify_str_t *action)
{
    size_t      n, start, end;
    dify_str_t  seg[DIFY_ROUTE_SEGMENTS];

    if (uri == NULL || len == 0 || uri[len - 1] == '/') {
        return 0;
    }

    /*
     * Walk the segments from the end: action, "status", "documents",
     * dataset_id, "datasets".  Invariant at the top of the loop:
     * end > 0 and uri[end - 1] != '/', so each segment is not empty.
     */

    end = len;

    for (n = 0; n < DIFY_ROUTE_SEGMENTS; n++) {

        start = end;

        while (start > 0 && uri[start - 1] != '/') {
            start--;
        }

        if (start == 0) {
            /* no "/" before the segment */
            return 0;
        }

        seg[n].data = uri + start;
        seg[n].len = end - start;

        switch (n) {

        case 1:
            if (!dify_segment_is(seg[n].data, seg[n].len, "status", 6)) {
                return 0;
            }
            break;

        case 2:
            if (!dify_segment_is(seg[n].data, seg[n].len, "documents", 9)) {
                return 0;
            }
            break;

        case 4:
            if (!dify_segment_is(seg[n].data, seg[n].len, "datasets", 8)) {
                return 0;
            }

            /* the prefix, uri[0 .. start - 1], may be anything */

            dataset_id->data = seg[3].data;
            dataset_id->len = seg[3].len;
            action->data = seg[0].data;
            action->len = seg[0].len;

            return 1;

        default: /* 0: action, 3: dataset_id */
            break;
        }

        /* skip the run of slashes before the segment */

        end = start - 1;

        while (end > 0 && uri[end - 1] == '/') {
            end--;
        }

        if (end == 0) {
            return 0;
        }
    }

    /* unreachable: case 4 returns */

    return 0;
}


size_t
dify_flask_path(const unsigned char *raw, size_t len, unsigned char *out)
{
    size_t  i, n;

    n = 0;

    for (i = 0; i < len && raw[i] != '?' && raw[i] != '#'; i++) {

        if (raw[i] == '%' && len - i > 2
            && dify_hex[raw[i + 1]] && dify_hex[raw[i + 2]])
        {
            out[n++] = (unsigned char) (dify_hex_value(raw[i + 1]) << 4
                                        | dify_hex_value(raw[i + 2]));
            i += 2;
            continue;
        }

        out[n++] = raw[i];
    }

    return n;
}


int
dify_is_uuid(const unsigned char *p, size_t len)
{
    size_t  i;

    if (len != 36) {
        return 0;
    }

    for (i = 0; i < 36; i++) {

        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (p[i] != '-') {
                return 0;
            }

            continue;
        }

        if (!dify_hex[p[i]]) {
            return 0;
        }
    }

    return 1;
}


int
dify_action_is_valid(const unsigned char *p, size_t len)
{
    switch (len) {

    case 6:
        return memcmp(p, "enable", 6) == 0;

    case 7:
        return memcmp(p, "disable", 7) == 0 || memcmp(p, "archive", 7) == 0;

    case 10:
        return memcmp(p, "un_archive", 10) == 0;

    default:
        return 0;
    }
}


dify_auth_e
dify_parse_authorization(const unsigned char *p, size_t len,
    dify_str_t *token)
{
    const unsigned char  *scheme, *last;

    token->len = 0;
    token->data = NULL;

    if (p == NULL) {
        return DIFY_AUTH_MISSING;
    }

    last = p + len;

    /* gunicorn's value.strip(" \t") */

    dify_strip_ows(&p, &last);

    /* "if auth_header is None or " " not in auth_header", once stripped */

    if (memchr(p, ' ', last - p) == NULL) {
        return DIFY_AUTH_MISSING;
    }

    /* auth_header.split(None, 1) */

    while (p < last && dify_py_space[*p]) {
        p++;
    }

    scheme = p;

    while (p < last && !dify_py_space[*p]) {
        p++;
    }

    if (p == scheme) {
        /* blank: split() gives [], the unpacking fails */
        return DIFY_AUTH_MISSING;
    }

    len = p - scheme;

    while (p < last && dify_py_space[*p]) {
        p++;
    }

    if (p == last) {
        /* one item: the unpacking fails before the scheme is looked at */
        return DIFY_AUTH_MISSING;
    }

    /* auth_scheme.lower() != "bearer"; no latin-1 letter lowers to ASCII */

    if (len != 6 || !dify_ascii_caseeq(scheme, "bearer", 6)) {
        return DIFY_AUTH_SCHEME;
    }

    /*
     * the rest up to the end of the stripped value: whitespace other
     * than SP and HTAB at its end stays in the token, as in Python
     */

    token->data = p;
    token->len = last - p;

    return DIFY_AUTH_OK;
}


void
dify_media_init(dify_media_t *m)
{
    m->type.len = 0;
    m->type.data = NULL;
    m->has_type = 0;
    m->conflict = 0;
    m->encoded = 0;
}


void
dify_media_type(dify_media_t *m, const unsigned char *p, size_t len)
{
    const unsigned char  *last;

    if (len == 0) {
        p = (const unsigned char *) "";
    }

    /* gunicorn's value.strip(" \t") */

    last = p + len;

    dify_strip_ows(&p, &last);

    len = last - p;

    if (m->has_type
        && (len != m->type.len || memcmp(p, m->type.data, len) != 0))
    {
        m->conflict = 1;
    }

    /* environ["CONTENT_TYPE"]: the last one wins */

    m->type.data = p;
    m->type.len = len;
    m->has_type = 1;
}


void
dify_media_encoding(dify_media_t *m, const unsigned char *p, size_t len)
{
    const unsigned char  *last, *end, *next;

    /*
     * #( content-coding ): elements separated by ",", each with optional
     * SP and HTAB around it; empty elements are allowed
     */

    if (len == 0) {
        return;
    }

    last = p + len;

    for ( ;; ) {

        next = memchr(p, ',', last - p);
        end = (next != NULL) ? next : last;

        dify_strip_ows(&p, &end);

        if (end != p
            && (end - p != 8 || !dify_ascii_caseeq(p, "identity", 8)))
        {
            m->encoded = 1;
            return;
        }

        if (next == NULL) {
            return;
        }

        p = next + 1;
    }
}


dify_media_e
dify_media_verdict(const dify_media_t *m)
{
    size_t                len;
    const unsigned char  *p, *last;

    if (!m->has_type) {
        return DIFY_MEDIA_MISSING;
    }

    if (m->conflict) {
        return DIFY_MEDIA_CONFLICT;
    }

    /* mimetype: value.partition(";")[0].strip().lower() */

    p = m->type.data;
    last = memchr(p, ';', m->type.len);

    if (last == NULL) {
        last = p + m->type.len;
    }

    while (p < last && dify_py_space[*p]) {
        p++;
    }

    while (last > p && dify_py_space[last[-1]]) {
        last--;
    }

    len = last - p;

    if (!dify_media_is_json(p, len)) {
        return DIFY_MEDIA_NOT_JSON;
    }

    if (m->encoded) {
        return DIFY_MEDIA_ENCODED;
    }

    return DIFY_MEDIA_OK;
}


dify_media_e
dify_check_media(const unsigned char *ct, size_t ct_len,
    const unsigned char *ce, size_t ce_len)
{
    dify_media_t  m;

    dify_media_init(&m);

    if (ct != NULL) {
        dify_media_type(&m, ct, ct_len);
    }

    if (ce != NULL) {
        dify_media_encoding(&m, ce, ce_len);
    }

    return dify_media_verdict(&m);
}


size_t
dify_json_envelope(unsigned char *buf, size_t size, int status,
    const char *code, const char *message)
{
    unsigned int    n;
    unsigned char  *p, *last, *d;
    unsigned char   num[sizeof("-2147483648")];

    if (buf == NULL) {
        return 0;
    }

    /* the status, in decimal; n is its magnitude, computed unsigned */

    d = num + sizeof(num);
    n = status < 0 ? 0U - (unsigned int) status : (unsigned int) status;

    do {
        *--d = (unsigned char) ('0' + n % 10);
        n /= 10;
    } while (n);

    if (status < 0) {
        *--d = '-';
    }

    p = buf;
    last = buf + size;

    p = dify_json_bytes(p, last, "{\"status\": ", 11);
    p = dify_json_bytes(p, last, (const char *) d, num + sizeof(num) - d);
    p = dify_json_bytes(p, last, ", \"code\": ", 10);
    p = dify_json_string(p, last, code);
    p = dify_json_bytes(p, last, ", \"message\": ", 13);
    p = dify_json_string(p, last, message);
    p = dify_json_bytes(p, last, "}", 1);

    if (p == NULL) {
        return 0;
    }

    return p - buf;
}


/* SP and HTAB off both ends: gunicorn's value.strip(" \t"), HTTP's OWS */

static void
dify_strip_ows(const unsigned char **p, const unsigned char **last)
{
    while (*p < *last && (**p == ' ' || **p == '\t')) {
        (*p)++;
    }

    while (*last > *p && ((*last)[-1] == ' ' || (*last)[-1] == '\t')) {
        (*last)--;
    }
}


static unsigned char
dify_hex_value(unsigned char c)
{
    if (c <= '9') {
        return c - '0';
    }

    return (c | 0x20) - 'a' + 10;
}


static int
dify_segment_is(const unsigned char *p, size_t len, const char *name,
    size_t name_len)
{
    return len == name_len && memcmp(p, name, len) == 0;
}


/*
 * Werkzeug's is_json on the media type, already stripped:
 * mt == "application/json"
 * or mt.startswith("application/") and mt.endswith("+json")
 */

static int
dify_media_is_json(const unsigned char *p, size_t len)
{
    if (len < sizeof("application/json") - 1
        || !dify_ascii_caseeq(p, "application/", sizeof("application/") - 1))
    {
        return 0;
    }

    if (len == sizeof("application/json") - 1) {
        return dify_ascii_caseeq(p + len - 4, "json", 4);
    }

    return dify_ascii_caseeq(p + len - 5, "+json", 5);
}


/* lower is lowercase ASCII */

static int
dify_ascii_caseeq(const unsigned char *p, const char *lower, size_t len)
{
    size_t         i;
    unsigned char  c;

    for (i = 0; i < len; i++) {
        c = p[i];

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }

        if (c != (unsigned char) lower[i]) {
            return 0;
        }
    }

    return 1;
}


/*
 * A JSON string as Python's json.dumps() writes it: quoted, with '"',
 * '\' and the control characters escaped.  Returns the end of what was
 * written, or NULL when it does not fit (or p is already NULL).
 */

static unsigned char *
dify_json_string(unsigned char *p, unsigned char *last, const char *s)
{
    unsigned char               c;
    const unsigned char        *q;
    static const unsigned char  hex[] = "0123456789abcdef";

    if (p == NULL || p == last) {
        return NULL;
    }

    *p++ = '"';

    if (s != NULL) {

        for (q = (const unsigned char *) s; *q != '\0'; q++) {
            c = *q;

            if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
                if (p == last) {
                    return NULL;
                }

                *p++ = c;
                continue;
            }

            if (last - p < 2) {
                return NULL;
            }

            *p++ = '\\';

            switch (c) {

            case '"':
            case '\\':
                *p++ = c;
                break;

            case '\b':
                *p++ = 'b';
                break;

            case '\f':
                *p++ = 'f';
                break;

            case '\n':
                *p++ = 'n';
                break;

            case '\r':
                *p++ = 'r';
                break;

            case '\t':
                *p++ = 't';
                break;

            default:
                if (last - p < 5) {
                    return NULL;
                }

                *p++ = 'u';
                *p++ = '0';
                *p++ = '0';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 0xf];
                break;
            }
        }
    }

    if (p == last) {
        return NULL;
    }

    *p++ = '"';

    return p;
}


static unsigned char *
dify_json_bytes(unsigned char *p, unsigned char *last, const char *s,
    size_t len)
{
    if (p == NULL || (size_t) (last - p) < len) {
        return NULL;
    }

    memcpy(p, s, len);

    return p + len;
}
