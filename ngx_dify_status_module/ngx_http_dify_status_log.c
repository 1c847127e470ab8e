/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The line logged for every rejected request, at dify_status_log_level
 * (error by default, as limit_req_log_level).  It is formatted exactly
 * as ngx_log_error() formats it, with the request's context, and goes to
 * the same logs; but what goes to a log file is not written at once:
 * the lines of one pass of the worker's event loop are written together,
 * one write() per file, by an event posted for the end of the pass.  A
 * write() of a line cost as much as the rest of a cached 429, and under
 * a flood of refused requests one pass answers dozens.
 *
 * Only file pointers are kept between a line and its write: the
 * request, its connection and its log may be gone by then; the files
 * live as long as the cycle, and their fd is read when written, so a
 * reopen (USR1) between the two cannot happen (it runs between passes).
 * Logs with a writer of their own (syslog, memory) get the line at once.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_LOG_FILES   4
#define NGX_HTTP_DIFY_LOG_BUFFER  (32 * 1024)


typedef struct {
    ngx_open_file_t           *file;
    u_char                    *start;
    u_char                    *pos;
    time_t                     disk_full_time;
    ngx_uint_t                 direct;  /* not a regular file */
} ngx_http_dify_log_buf_t;


static void ngx_http_dify_log_append(ngx_http_dify_log_buf_t *b,
    ngx_open_file_t *file, u_char *line, size_t len);
static void ngx_http_dify_log_flush_handler(ngx_event_t *ev);
static void ngx_http_dify_log_write(ngx_http_dify_log_buf_t *b);


static ngx_str_t  ngx_http_dify_log_levels[] = {
    ngx_null_string,
    ngx_string("emerg"),
    ngx_string("alert"),
    ngx_string("crit"),
    ngx_string("error"),
    ngx_string("warn"),
    ngx_string("notice"),
    ngx_string("info"),
    ngx_string("debug")
};


static ngx_http_dify_log_buf_t  ngx_http_dify_log_bufs[NGX_HTTP_DIFY_LOG_FILES];
static ngx_event_t              ngx_http_dify_log_flush;
static ngx_uint_t               ngx_http_dify_log_ready;


void
ngx_http_dify_log(ngx_uint_t level, ngx_log_t *log, const char *fmt, ...)
{
    u_char                   *p, *last;
    va_list                   args;
    ngx_uint_t                i, debug_connection;
    ngx_http_dify_log_buf_t  *b, *free;
    u_char                    errstr[NGX_MAX_ERROR_STR];

    if (log->log_level < level
        && !(log->log_level & NGX_LOG_DEBUG_CONNECTION))
    {
        return;
    }

    /* ngx_log_error_core()'s line, byte for byte */

    last = errstr + NGX_MAX_ERROR_STR;

    p = ngx_cpymem(errstr, ngx_cached_err_log_time.data,
                   ngx_cached_err_log_time.len);

    p = ngx_slprintf(p, last, " [%V] ", &ngx_http_dify_log_levels[level]);

    p = ngx_slprintf(p, last, "%P#" NGX_TID_T_FMT ": ",
                     ngx_log_pid, ngx_log_tid);

    if (log->connection) {
        p = ngx_slprintf(p, last, "*%uA ", log->connection);
    }

    va_start(args, fmt);
    p = ngx_vslprintf(p, last, fmt, args);
    va_end(args);

    if (level != NGX_LOG_DEBUG && log->handler) {
        p = log->handler(log, p, last - p);
    }

    if (p > last - NGX_LINEFEED_SIZE) {
        p = last - NGX_LINEFEED_SIZE;
    }

    ngx_linefeed(p);

    debug_connection = (log->log_level & NGX_LOG_DEBUG_CONNECTION) != 0;

    for ( /* void */ ; log; log = log->next) {

        if (log->log_level < level && !debug_connection) {
            break;
        }

        if (log->writer || !ngx_http_dify_log_ready) {
            if (log->writer) {
                log->writer(log, level, errstr, p - errstr);

            } else if (ngx_time() != log->disk_full_time) {
                if (ngx_write_fd(log->file->fd, errstr, p - errstr) == -1
                    && ngx_errno == NGX_ENOSPC)
                {
                    log->disk_full_time = ngx_time();
                }
            }

            continue;
        }

        b = NULL;
        free = NULL;

        for (i = 0; i < NGX_HTTP_DIFY_LOG_FILES; i++) {
            if (ngx_http_dify_log_bufs[i].file == log->file) {
                b = &ngx_http_dify_log_bufs[i];
                break;
            }

            if (free == NULL && ngx_http_dify_log_bufs[i].file == NULL) {
                free = &ngx_http_dify_log_bufs[i];
            }
        }

        if (b == NULL) {
            b = free;
        }

        if (b == NULL) {
            /* more files than slots: this one at once */
            (void) ngx_write_fd(log->file->fd, errstr, p - errstr);
            continue;
        }

        ngx_http_dify_log_append(b, log->file, errstr, p - errstr);
    }
}


/*
 * A pipe (stderr under docker, a FIFO), a tty or a socket gets each line
 * at once, as from ngx_log_error(): a line is under PIPE_BUF, so its
 * write() is atomic, while one of a whole buffer is not: on a full pipe
 * it writes what fits and returns that on a signal, cutting a line, and
 * the writes of two workers interleave.
 */

static void
ngx_http_dify_log_append(ngx_http_dify_log_buf_t *b, ngx_open_file_t *file,
    u_char *line, size_t len)
{
    ngx_file_info_t  fi;

    if (b->file == file && b->disk_full_time == ngx_time()) {
        return;
    }

    if (b->file != file) {
        b->file = file;
        b->pos = b->start;
        b->disk_full_time = 0;
        b->direct = ngx_fd_info(file->fd, &fi) != NGX_FILE_ERROR
                    && !ngx_is_file(&fi);
    }

    if (b->direct) {
        (void) ngx_write_fd(file->fd, line, len);

    } else {
        if ((size_t) (b->start + NGX_HTTP_DIFY_LOG_BUFFER - b->pos) < len) {
            ngx_http_dify_log_write(b);
            b->file = file;
        }

        b->pos = ngx_cpymem(b->pos, line, len);
    }

    /* the slot, direct or not, is freed at the end of the pass */

    if (!ngx_http_dify_log_flush.posted) {
        ngx_post_event(&ngx_http_dify_log_flush, &ngx_posted_events);
    }
}


static void
ngx_http_dify_log_flush_handler(ngx_event_t *ev)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_DIFY_LOG_FILES; i++) {
        if (ngx_http_dify_log_bufs[i].file != NULL) {
            ngx_http_dify_log_write(&ngx_http_dify_log_bufs[i]);
        }
    }
}


/* what the buffer holds, to its file; the slot is free again after */

static void
ngx_http_dify_log_write(ngx_http_dify_log_buf_t *b)
{
    size_t   len;
    ssize_t  n;

    len = b->pos - b->start;

    if (len != 0) {
        n = ngx_write_fd(b->file->fd, b->start, len);

        if (n == -1 && ngx_errno == NGX_ENOSPC) {
            b->disk_full_time = ngx_time();
            b->pos = b->start;
            return;
        }
    }

    b->pos = b->start;

    if (b->disk_full_time != ngx_time()) {
        b->file = NULL;
    }
}


ngx_int_t
ngx_http_dify_log_init_process(ngx_cycle_t *cycle)
{
    u_char      *p;
    ngx_uint_t   i;

    p = ngx_palloc(cycle->pool,
                   NGX_HTTP_DIFY_LOG_FILES * NGX_HTTP_DIFY_LOG_BUFFER);
    if (p == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < NGX_HTTP_DIFY_LOG_FILES; i++) {
        ngx_http_dify_log_bufs[i].file = NULL;
        ngx_http_dify_log_bufs[i].start = p + i * NGX_HTTP_DIFY_LOG_BUFFER;
        ngx_http_dify_log_bufs[i].pos = ngx_http_dify_log_bufs[i].start;
        ngx_http_dify_log_bufs[i].disk_full_time = 0;
        ngx_http_dify_log_bufs[i].direct = 0;
    }

    ngx_memzero(&ngx_http_dify_log_flush, sizeof(ngx_event_t));

    ngx_http_dify_log_flush.handler = ngx_http_dify_log_flush_handler;
    ngx_http_dify_log_flush.log = cycle->log;

    ngx_http_dify_log_ready = 1;

    return NGX_OK;
}


void
ngx_http_dify_log_exit_process(ngx_cycle_t *cycle)
{
    if (!ngx_http_dify_log_ready) {
        return;
    }

    if (ngx_http_dify_log_flush.posted) {
        ngx_delete_posted_event(&ngx_http_dify_log_flush);
    }

    ngx_http_dify_log_flush_handler(&ngx_http_dify_log_flush);

    ngx_http_dify_log_ready = 0;
}
