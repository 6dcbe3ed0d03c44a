from common.errors import ApplicationError


class OutOfStock(ApplicationError):
    status_code = 409
    code = "out_of_stock"
    message = "Some products of this order are not in stock in the quantity asked for."
