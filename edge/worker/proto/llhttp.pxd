# The parts of llhttp (vendor/llhttp, Node.js's HTTP/1 parser) that h1parser.pyx uses.
from libc.stdint cimport uint8_t, uint16_t, uint64_t


cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        void *data
        uint64_t content_length
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint8_t upgrade
        uint16_t status_code

    ctypedef int (*llhttp_data_cb)(llhttp_t*, const char *at, size_t length) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t*) noexcept

    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_url
        llhttp_data_cb on_status
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_cb on_header_value_complete
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete

    ctypedef enum llhttp_type_t:
        HTTP_REQUEST
        HTTP_RESPONSE

    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_PAUSED_UPGRADE
        HPE_PAUSED_H2_UPGRADE
        HPE_USER

    ctypedef enum llhttp_method_t:
        HTTP_CONNECT

    void llhttp_settings_init(llhttp_settings_t *settings)
    void llhttp_init(llhttp_t *parser, llhttp_type_t kind, const llhttp_settings_t *settings)
    llhttp_errno_t llhttp_execute(llhttp_t *parser, const char *data, size_t length)
    void llhttp_resume_after_upgrade(llhttp_t *parser)
    int llhttp_should_keep_alive(const llhttp_t *parser)
    const char *llhttp_get_error_reason(const llhttp_t *parser)
    const char *llhttp_errno_name(llhttp_errno_t err)
    llhttp_errno_t llhttp_get_errno(const llhttp_t *parser)
    const char *llhttp_method_name(llhttp_method_t method)
