from .resattnet import *
